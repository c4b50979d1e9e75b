-- What content_html was rendered from (md5 of the content it was rendered from), beside
-- which renderer (rendered_with). During a rollout a replica of the previous release
-- still saves pages: its UPDATE writes its own rendering and leaves rendered_with naming
-- today's renderer, so that page would keep the older rendering for good. Its content
-- no longer matches rendered_from, and the page is rendered again (handlers.rerender_once).
-- NULL (a page from before this column, or one an older replica inserted): rendered again.
ALTER TABLE portals ADD COLUMN rendered_from text;
