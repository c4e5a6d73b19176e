"""`python -m workflow.selection`: the selection stage (workflow/selection/__init__.py)."""
from workflow.selection import main

raise SystemExit(main())
