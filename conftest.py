# The editgate pytest plugin and its fixtures, for every test run from this checkout.
# Outside this repository, enable them with `-p editgate.plugin -p editgate.fixtures`.
pytest_plugins = ["editgate.plugin", "editgate.fixtures"]
