"""Dioptra's built-in task plugins: a plugin package like any user's.

Each subpackage groups plugin modules by concern (``data``, ``random``, ``datasets``,
``estimators``, ``attacks``, ``defenses``, ``metrics``); each module registers plain
functions with ``@pyplugs.register``, so a flow calls them as
``pyplugs.call_task("dioptra_builtins.<subpackage>", "<module>", "<function>", ...)``.

The package depends only on the SDK's public API (``from dioptra import pyplugs``) and on
its field libraries (numpy, Pillow, scikit-learn, adversarial-robustness-toolbox). Nothing
is downloaded at run time: the sample data ships inside scikit-learn or is drawn by Pillow.
"""
