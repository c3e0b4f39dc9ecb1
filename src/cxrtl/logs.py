"""Command-line logging: cxrtl's own messages on stderr; image decoders' chatter only with ``-v``.

pydicom logs every failed decoder plugin at ERROR with its traceback, and warns about each odd header
it repairs; Pillow and the JPEG plugins do likewise. cxrtl already reports each such file as one line
(an error row, a skipped file with its reason), so without ``-v`` those records and warnings are
dropped, and any other third-party record loses its traceback. ``-v`` shows all of it.
"""

from __future__ import annotations

import logging
import warnings

# Libraries whose messages are about one image that cxrtl reports itself.
DECODER_LOGGERS = ("pydicom", "PIL", "pylibjpeg", "openjpeg", "libjpeg", "jpeg_ls", "gdcm")
FORMAT = "%(levelname)s %(name)s: %(message)s"


class QuietThirdParty(logging.Filter):
    """Drop decoder libraries' records and strip tracebacks from other non-cxrtl records."""

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if name == "cxrtl" or name.startswith("cxrtl."):
            return True
        if any(name == lib or name.startswith(lib + ".") for lib in DECODER_LOGGERS):
            return False
        if record.exc_info or record.exc_text or record.stack_info:
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


# Libraries whose INFO lines are progress chatter (the ONNX exporter's pass-by-pass log, highdicom's modules
# copied, dicomweb-client's requests, pynetdicom's associations): WARNING unless -v.
CHATTY_LOGGERS = ("onnxscript", "onnx_ir", "highdicom", "dicomweb_client", "pynetdicom")


def configure_logging(verbose: bool = False) -> None:
    """Root logging for the CLI: DEBUG and everything with ``verbose``, else INFO with decoders quiet.

    Like ``logging.basicConfig``, a root logger that already has handlers (an application, pytest) keeps
    them; they get the filter.
    """
    root = logging.getLogger()
    logging.basicConfig(format=FORMAT)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.captureWarnings(verbose)  # with -v, decoder warnings become log lines next to their file
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    for handler in root.handlers:
        for old in [f for f in handler.filters if isinstance(f, QuietThirdParty)]:
            handler.removeFilter(old)
        if not verbose:
            handler.addFilter(QuietThirdParty())
    if not verbose:
        modules = "|".join(DECODER_LOGGERS)
        warnings.filterwarnings("ignore", module=rf"({modules})(\.|$)")
