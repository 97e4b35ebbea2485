"""The progress bar that every converter of this folder shows while it maps the tensors.

mmengine's ``track_iter_progress`` (count, elapsed time, ETA) on stderr, so that what a
converter prints to stdout stays as it was; ``--no-progress`` turns it off (for logs).
"""
import sys

from mmengine.utils import track_iter_progress


class TrackedStateDict(dict):
    """A state dict whose ``items()`` advances a progress bar, one step per tensor.

    The ``*_official_to_mmsparse`` functions of ``mmsparse.models.utils`` walk their input
    once through ``items()``; wrapping it shows their progress without changing them.
    """

    def items(self):
        return track_iter_progress(list(super().items()), file=sys.stderr)


def with_progress(convert, enabled=True):
    """``convert`` (``state_dict -> state_dict``), showing its progress over the tensors if
    ``enabled``.

    Args:
        convert (Callable[[dict], dict]): A key mapping of ``mmsparse.models.utils``.
        enabled (bool): Show the bar. Defaults to True.
    """
    if not enabled:
        return convert
    return lambda state_dict: convert(TrackedStateDict(state_dict))


def add_progress_argument(parser):
    """Add ``--no-progress`` (``args.progress``) to a converter's ``parser``."""
    parser.add_argument('--no-progress', dest='progress', action='store_false',
                        help='do not show the progress bar (on stderr)')
