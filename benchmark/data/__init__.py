"""Raw dataset folders -> validated arrays -> HDF5 slice stores (see docs/DESIGN.md and docs/data.md).

Submodules: ``brats`` / ``paired`` (readers), ``colour`` (YCbCr), ``synthetic`` (phantoms), ``store``
(HDF5 stores), ``splits`` (patient-level splits), ``preprocess`` (raw folder -> stores). Importing this
package stays cheap (no torch) so readers can be used on their own.
"""


class DataError(ValueError):
    """Bad or inconsistent input data; the message names the file (or case) and the problem."""

