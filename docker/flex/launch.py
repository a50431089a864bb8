"""Flex Template entry point (``FLEX_TEMPLATE_PYTHON_PY_FILE``): the template's parameters
run as `curation run`, detached (see ``app/template.py``)."""

from app.template import main

if __name__ == "__main__":
    main()
