from editgate.report.cli import main

raise SystemExit(main())
