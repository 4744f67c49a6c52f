"""`python -m postoffice ...`: the same CLI as the `postoffice` script."""

from __future__ import annotations

from postoffice.cli import main

if __name__ == "__main__":
    main(prog_name="postoffice")
