-- A person's own Language and Time Zone (Account → Preferences; issue 17). NULL: not
-- chosen, so pages follow the browser's Accept-Language and the agency's branding. The
-- time zone is checked against the IANA database by the service (the list changes with
-- tzdata updates, so it is not a CHECK here).
ALTER TABLE users ADD COLUMN locale text CHECK (locale IN ('en', 'de', 'fr', 'es'));
ALTER TABLE users ADD COLUMN time_zone text CHECK (length(time_zone) BETWEEN 1 AND 100);
