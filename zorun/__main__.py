"""`python -m zorun` is the `zorun` command."""

from zorun.commands.cli import main

if __name__ == "__main__":
    main()
