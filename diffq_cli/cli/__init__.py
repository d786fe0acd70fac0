"""The command line: Typer commands (parse, call, render), Rich tables; the top layer."""
