"""``python -m dapo_cli`` is the ``dapo`` command."""

from dapo_cli.cli.app import main

if __name__ == "__main__":
    main()
