-- Which renderer wrote content_html (domain.RENDERER: our rendering rules and the
-- markdown-it-py and nh3 versions). A page rendered by an older one is rendered again in
-- the background (handlers.rerender_once), so a fix to the sanitiser, ours or a library's,
-- reaches the pages saved before it, not only those saved after. Every page saved before
-- this column existed is rendered again once.
ALTER TABLE portals ADD COLUMN rendered_with text NOT NULL DEFAULT '';
