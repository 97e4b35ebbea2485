"""What every converter of this folder shares: its command line and its progress bar.

Each converter maps the keys of an official checkpoint with one function of
``mmsparse.models.utils`` (``state_dict -> state_dict``) and writes the result with
:func:`~mmsparse.models.utils.convert_checkpoint_file`. The progress bar is mmengine's
``track_iter_progress`` (count, elapsed time, ETA) on stderr, so that what a converter
prints to stdout stays as it was; ``--no-progress`` turns it off (for logs).
"""
import argparse
import sys

from mmengine.utils import track_iter_progress

from mmsparse.models.utils import convert_checkpoint_file


class TrackedStateDict(dict):
    """A state dict whose ``items()`` advances a progress bar, one step per tensor.

    The ``*_official_to_mmsparse`` functions of ``mmsparse.models.utils`` walk their input
    once through ``items()``; wrapping it shows their progress without changing them.
    """

    def items(self):
        return track_iter_progress(list(super().items()), file=sys.stderr)


def with_progress(mapping, enabled=True):
    """``mapping`` (``state_dict -> state_dict``), showing its progress over the tensors if
    ``enabled``.

    Args:
        mapping (Callable[[dict], dict]): A key mapping of ``mmsparse.models.utils``.
        enabled (bool): Show the bar. Defaults to True.
    """
    if not enabled:
        return mapping
    return lambda state_dict: mapping(TrackedStateDict(state_dict))


def convert_file(mapping, src, dst, progress=True):
    """Convert checkpoint ``src`` with ``mapping`` and write the result to ``dst``.

    Args:
        mapping (Callable[[dict], dict]): The key mapping.
        src (str): The official checkpoint.
        dst (str): The output path; its folder is created.
        progress (bool): Show a progress bar over the tensors on stderr. Defaults to True.
    """
    convert_checkpoint_file(src, dst, with_progress(mapping, progress))


def converter_parser(doc, source):
    """The command line every converter takes: ``src dst [--no-progress]``.

    Args:
        doc (str): The converter's module docstring; its first line describes the tool.
        source (str): What ``src`` is, for ``--help``.

    Returns:
        argparse.ArgumentParser: ``args.src``, ``args.dst`` and ``args.progress``; a
        converter adds its own options.
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument('src', help=source)
    parser.add_argument('dst', help='output path')
    parser.add_argument('--no-progress', dest='progress', action='store_false',
                        help='do not show the progress bar (on stderr)')
    return parser


def key_mapping_converter(mapping, doc, source):
    """``(convert, main)`` of a converter that only applies ``mapping``.

    Args:
        mapping (Callable[[dict], dict]): The key mapping.
        doc (str), source (str): See :func:`converter_parser`.

    Returns:
        tuple[Callable, Callable]: ``convert(src, dst, progress=True)`` (see
        :func:`convert_file`) and ``main(argv=None)``, the command line.
    """

    def convert(src, dst, progress=True):
        convert_file(mapping, src, dst, progress)

    def main(argv=None):
        args = converter_parser(doc, source).parse_args(argv)
        convert(args.src, args.dst, args.progress)

    return convert, main
