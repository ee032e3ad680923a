"""Ready-to-correct examples from vendored real data (``softunlearn example NAME --out DIR``).

:mod:`.builder` builds one by name (``build_example``); :mod:`.tabular` holds Adult and Bank (UCI
tables, a ReLU MLP), :mod:`.colored_mnist` the image example (a small cnn that reads a tint),
:mod:`.common` what they share (``ExampleInfo``, atomic publishing). Nothing is downloaded: the data
are the gzip files in ``workers/engine/vendor`` (``SOURCES.md``).
"""
