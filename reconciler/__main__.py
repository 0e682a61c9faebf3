"""Lets ``python -m reconciler`` run the command-line interface."""

from reconciler.app.cli import main

if __name__ == "__main__":
    main()
