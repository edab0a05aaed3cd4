"""``python -m fia``: the same as the ``fia`` command."""

from fia.cli import main

if __name__ == "__main__":
    main()
