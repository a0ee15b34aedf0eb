"""A plugin that fails at import: diffratio must report it and load every other plugin."""

raise ImportError("this plugin is broken on purpose (tests/plugin_broken)")
