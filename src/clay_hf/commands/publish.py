"""`clay-publish`: Assemble, validate and upload a Clay model folder to the Hub (token from HF_TOKEN)."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from ..utils.errors import user_errors


@user_errors
def main(argv: list[str] | None = None) -> int:
    """Assemble, validate and upload a Clay model folder to the Hub (token from HF_TOKEN)."""
    import tempfile

    from ..hub.publish import STAGING_MARKER, stage_repository, upload_repository

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model_dir", required=True, help="a save_pretrained folder with preprocessor_config.json")
    parser.add_argument("--repo_id", default="made-with-clay/Clay")
    parser.add_argument(
        "--base_model",
        help="fine-tuned models: the Hub id of the pretrained Clay it was fine-tuned from, when clay-finetune "
        "recorded a local folder",
    )
    parser.add_argument(
        "--license",
        help="weights trained from scratch: their licence, a Hub licence id (default apache-2.0; 'other' with "
        "--license_name and --license_link). Converted Clay v0 weights and models trained from them are OpenRAIL-M",
    )
    parser.add_argument("--license_name", help="with --license other: the licence's id, e.g. my-licence-1.0")
    parser.add_argument("--license_link", help="with --license other: a link to the licence text")
    parser.add_argument("--staging_dir", help="where to assemble the repository (default: a temporary folder)")
    parser.add_argument("--dry_run", action="store_true", help="do everything but upload; print what would go where")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--revision", help="a branch to upload to (created if missing)")
    args = parser.parse_args(argv)
    staging = Path(args.staging_dir) if args.staging_dir else Path(tempfile.mkdtemp(prefix="clay-hub-"))
    try:
        staged = stage_repository(
            args.model_dir,
            staging,
            args.repo_id,
            base_model=args.base_model,
            license=args.license,
            license_name=args.license_name,
            license_link=args.license_link,
        )
    except BaseException:
        if not args.staging_dir:  # the temporary copy of a failed staging is ours to remove
            shutil.rmtree(staging, ignore_errors=True)
        raise
    for note in staged.notes:
        print(f"note: {note}")
    if staged.reused:
        print(f"reused {staged.folder}: a staging folder of an earlier run (it holds {STAGING_MARKER}), emptied first")
    target = f"https://huggingface.co/{args.repo_id}" + (f"/tree/{args.revision}" if args.revision else "")
    for name in staged.files:
        size = (staged.folder / name).stat().st_size
        print(f"{'would upload' if args.dry_run else 'uploading'} {name:<28} {size:>12,} bytes → {target}/{name}")
    print(f"staged repository: {staged.folder}")
    print(f"model card: {staged.folder / 'README.md'}")
    if not args.dry_run:
        print(f"uploaded: {upload_repository(staged, private=args.private, revision=args.revision)}")
        if not args.staging_dir:
            shutil.rmtree(staging, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
