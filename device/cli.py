"""Subcommands of the terminal side: `chot terminal ...`, `chot scan`, `chot issue`."""

import sys


def register(sub):
    term = sub.add_parser("terminal", help="run and check a checkpoint terminal")
    term.set_defaults(group_parser=term)
    tsub = term.add_subparsers(dest="terminal_command", metavar="ACTION")

    p = tsub.add_parser("run", help="run the terminal daemon")
    p.add_argument("--config", "-c", default="/etc/chot/terminal.toml", help="terminal config (TOML)")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many frames (tests)")
    p.set_defaults(func=_run)

    p = tsub.add_parser("check-config", help="validate a terminal config and list every problem",
                        description="Check every key, what spans keys (pin conflicts, pins that do not exist, "
                        "incomplete TLS) and what the keys point at on this machine (files, the outbox folder, key "
                        "modes); list every problem and exit 2 when there is one.")
    p.add_argument("file", nargs="?", help="terminal config (TOML)")
    p.add_argument("--defaults", action="store_true", help="print every key with its default")
    p.add_argument("--offline", action="store_true",
                   help="leave out this machine's files and folders (a config meant for another terminal)")
    p.set_defaults(func=_check_config)

    p = tsub.add_parser("selftest", help="check LEDs, buzzer, camera, outbox, broker and clock")
    p.add_argument("--config", "-c", default="/etc/chot/terminal.toml", help="terminal config (TOML)")
    p.set_defaults(func=_selftest)

    p = tsub.add_parser("voice", help="make the speaker's Vietnamese prompts (espeak-ng) in feedback.voice_dir",
                        description="Write pass.wav, fail.wav and guard.wav with espeak-ng's Vietnamese voice into "
                        "--dir, or the config's feedback.voice_dir. Recorded prompts may replace them (same names).")
    p.add_argument("--config", "-c", help="terminal config whose feedback.voice_dir to fill")
    p.add_argument("--dir", help="the folder to write (default: the config's feedback.voice_dir)")
    p.set_defaults(func=_voice)

    from device import scan_cli  # noqa: PLC0415  (kept in its own module)

    scan_cli.register(sub)
    from device.credentials import issue_cli  # noqa: PLC0415

    issue_cli.register(sub)


def _check_config(args):
    from device.config import defaults_toml, load_terminal_config

    if args.defaults:
        sys.stdout.write(defaults_toml())
        return 0
    if not args.file:
        print("chot terminal check-config: give a FILE, or --defaults", file=sys.stderr)
        return 2
    cfg = load_terminal_config(args.file, world=not args.offline)
    note = " (offline: files not checked)" if args.offline else ""
    print(f"{args.file}: OK{note} (device {cfg.device.id}, checkpoint {cfg.device.checkpoint}, {cfg.device.direction})")
    if not cfg.privacy.seal_public_key:
        from device.daemon import NO_SEAL_WARNING

        print(f"note: {NO_SEAL_WARNING}", file=sys.stderr)
    return 0


def _run(args):
    from device.daemon import run_from_config

    return run_from_config(args.config, max_frames=args.max_frames)


def _selftest(args):
    from device.selftest import run_selftest

    return run_selftest(args.config)


def _voice(args):
    from device.io.speaker import generate

    folder = args.dir
    if folder is None:
        if args.config:
            from device.config import load_terminal_config

            folder = load_terminal_config(args.config).feedback.voice_dir
        else:
            from chot.config import rules
            from device.io.settings import FeedbackSettings

            folder = rules(FeedbackSettings)["voice_dir"].default
    for path in generate(folder):
        print(path)
    return 0
