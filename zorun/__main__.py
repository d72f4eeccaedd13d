"""`python -m zorun` is the `zorun` command."""

from zorun.cli import main

if __name__ == "__main__":
    main()
