"""`python -m ddpm_lesion ...` is the same as the `ddpm-lesion` console command."""

from ddpm_lesion.commands.cli import main

raise SystemExit(main())
