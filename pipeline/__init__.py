"""mithril-build: reproducible, measured builds of confidential AI servers."""

CONFIG_FILE = "mithril.yaml"  # a project is the folder that holds it
