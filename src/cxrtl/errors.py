"""The one exception type a user should ever see: a problem with their input, and its fix."""


class CxrtlError(Exception):
    """A user-facing error. The CLI prints ``cxrtl: error: <message>`` on one line and exits with 2.

    The message names the problem and the fix, e.g.
    ``"no recognisable dataset layout under /data/x; expected COVID-19_Radiography_Dataset/, chest_xray/,
    class folders or a CSV manifest"``.
    """

    exit_code = 2
