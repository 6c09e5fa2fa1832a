"""``python -m calibmonai.study plan|run|report STUDY``."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    import fire

    from calibmonai.cli import check_command_flags, error_message
    from calibmonai.study.cli import StudyCLI

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        check_command_flags(StudyCLI, args, "calibmonai study")
        fire.Fire(StudyCLI, command=args, name="calibmonai study")
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"calibmonai study: error: {error_message(e)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
