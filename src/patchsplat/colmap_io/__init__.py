"""COLMAP models on disk: the one place that knows their file layouts.

- :mod:`.layout`: the binary record tables (struct formats, numpy record types, field offsets),
  COLMAP's camera model table (id, name, number of parameters) and :class:`~.layout.CameraRecord`,
  the one camera record type (whichever file or library a camera came from);
- :mod:`.binary`: the bounded record-by-record walk of the binary files, which checks every count
  against the file's length before trusting it (the validator's, and the guard of every read);
- :mod:`.arrays`: the vectorised reader and writer the stages use (:class:`~.arrays.ModelArrays`),
  guarded by that walk;
- :mod:`.text`: the text files' headers and their line-by-line diagnosis, and ``cameras.txt`` read
  as the same camera records.

pycolmap is still the reader of record for the validator (:mod:`patchsplat.validate.model_io`) and
the writer of text-to-binary conversions; the camera model table is taken from it.
"""
