"""`clay-publish`: Assemble, validate and upload a Clay model folder to the Hub (token from HF_TOKEN)."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..utils.errors import user_errors
from ._common import parse_arguments


@dataclass(kw_only=True)
class PublishArguments:
    """The arguments of `clay-publish`."""

    model_dir: str = field(metadata={"help": "a save_pretrained folder with preprocessor_config.json"})
    repo_id: str = "made-with-clay/Clay"
    base_model: str | None = field(
        default=None,
        metadata={
            "help": "fine-tuned models: the Hub id of the pretrained Clay it was fine-tuned from, when clay-finetune "
            "recorded a local folder"
        },
    )
    license: str | None = field(
        default=None,
        metadata={
            "help": "weights that descend from random initialisation alone (trained from scratch, or from such "
            "weights): their licence, a Hub licence id (default apache-2.0; 'other' with --license_name and "
            "--license_link). Converted Clay v0 weights and models trained from them, at any remove, are OpenRAIL-M"
        },
    )
    license_name: str | None = field(
        default=None, metadata={"help": "with --license other: the licence's id, e.g. my-licence-1.0"}
    )
    license_link: str | None = field(
        default=None, metadata={"help": "with --license other: a link to the licence text"}
    )
    staging_dir: str | None = field(
        default=None, metadata={"help": "where to assemble the repository (default: a temporary folder)"}
    )
    dry_run: bool = field(default=False, metadata={"help": "do everything but upload; print what would go where"})
    private: bool = False
    revision: str | None = field(default=None, metadata={"help": "a branch to upload to (created if missing)"})


@user_errors
def main(argv: list[str] | None = None) -> int:
    """Assemble, validate and upload a Clay model folder to the Hub (token from HF_TOKEN)."""
    import tempfile

    from ..hub.publish import STAGING_MARKER, stage_repository, upload_repository

    args = parse_arguments(PublishArguments, argv, main.__doc__)
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
