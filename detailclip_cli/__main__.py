"""``python -m detailclip_cli`` (and ``torchrun -m detailclip_cli``) entry point."""

from detailclip_cli.cli import main

if __name__ == "__main__":
    main()
