"""``python -m slimkit``: the same command line as the ``slimkit`` script."""

from slimkit.cli.app import main

if __name__ == "__main__":
    main()
