"""`python -m llama2_colab` runs the command-line interface."""

from .cli import main

raise SystemExit(main())
