"""`python -m supervisor` == `baileys-supervisor`."""

from .cli import main

raise SystemExit(main())
