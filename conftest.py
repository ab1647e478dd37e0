# The editgate pytest plugin, its fixtures and its reports, for every test run from this checkout.
# Outside this repository, enable them with
# `-p editgate.plugin -p editgate.fixtures -p editgate.report.plugin`.
pytest_plugins = ["editgate.plugin", "editgate.fixtures", "editgate.report.plugin"]
