"""The `dapo` command line: one Typer module per command group, composed in app.py."""
