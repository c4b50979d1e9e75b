-- The logo's size in pixels, so an email can give its <img> a width and height (Outlook
-- for Windows sizes images by those attributes, not by CSS). 0: not known (a logo saved
-- before this release, until it is uploaded again): the email gives the height only.
ALTER TABLE branding
    ADD COLUMN logo_width  integer NOT NULL DEFAULT 0 CHECK (logo_width >= 0),
    ADD COLUMN logo_height integer NOT NULL DEFAULT 0 CHECK (logo_height >= 0);
