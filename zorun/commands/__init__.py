"""The console commands (pyproject's [project.scripts]): each parses its arguments or composes its config, calls
the library and maps failures to exit codes. Library modules never import from here."""
