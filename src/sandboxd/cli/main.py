"""`python -m sandboxd.cli.main` as before: the CLI now lives in the client distribution
(sandboxd_sdk.cli); this keeps the old module path working for scripts and tests."""

from sandboxd_sdk.cli.main import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
