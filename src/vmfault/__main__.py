"""`python -m vmfault` runs the command-line tool."""

from vmfault.cli import main

main()
