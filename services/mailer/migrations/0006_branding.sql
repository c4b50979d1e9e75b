-- Settings → Branding: one row, written by the first save (until then the MAILER_…
-- variables give the values). The logo lives here too, re-encoded, so every replica of
-- every service serves the same picture; its etag (a digest of the bytes) names it.
CREATE TABLE branding (
    id            boolean PRIMARY KEY DEFAULT true CHECK (id),
    agency_name   text NOT NULL DEFAULT '' CHECK (length(agency_name) <= 100),
    accent_colour text NOT NULL DEFAULT '' CHECK (accent_colour = '' OR accent_colour ~ '^#[0-9a-f]{6}$'),
    reply_to      text NOT NULL DEFAULT '' CHECK (length(reply_to) <= 320),
    footer_text   text NOT NULL DEFAULT '' CHECK (length(footer_text) <= 500),
    logo          bytea,
    logo_type     text NOT NULL DEFAULT '' CHECK (logo_type IN ('', 'image/png', 'image/jpeg')),
    logo_etag     text NOT NULL DEFAULT '',
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CHECK ((logo IS NULL) = (logo_etag = ''))
);
