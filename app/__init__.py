"""The Streamlit review app; installed as the ``medres_app`` package (pyproject.toml).

Streamlit runs ``Home.py`` as a script and the pages in ``views/`` by path; nothing imports
this package. It is a regular package (this file) so that ``medres review serve`` can find
``Home.py`` with :mod:`importlib.resources` in an editable install too: on Python 3.11 a
namespace package under setuptools' editable finder is not a readable resource root.
"""
