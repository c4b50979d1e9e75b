-- Languages and time zones (issue 17). A delivery keeps the language its job asked for
-- (NULL: the branding's Language when it is sent). An unknown value is not refused here:
-- the mailer renders it in the branding's Language rather than lose the email.
ALTER TABLE deliveries ADD COLUMN locale text CHECK (length(locale) <= 100);
-- Settings → Branding: the agency's Language (emails of jobs without one) and Time Zone
-- (dates in emails). Empty: not saved yet, MAILER_DEFAULT_LANGUAGE / MAILER_TIME_ZONE.
ALTER TABLE branding ADD COLUMN default_locale text NOT NULL DEFAULT ''
    CHECK (default_locale IN ('', 'en', 'de', 'fr', 'es'));
ALTER TABLE branding ADD COLUMN time_zone text NOT NULL DEFAULT ''
    CHECK (length(time_zone) <= 100);
