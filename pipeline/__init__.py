"""mithril-build: reproducible, measured builds of confidential AI servers."""
