-- The language of an invitation's emails and pages (issue 17): en, de, fr or es; NULL
-- means the agency's Language (Settings → Branding). A staff invitation and each of a
-- group's invitations have their own row here, so this one column covers them all.
ALTER TABLE invitations ADD COLUMN locale text CHECK (locale IN ('en', 'de', 'fr', 'es'));
