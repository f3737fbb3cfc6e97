from poisonscan.cli import main

raise SystemExit(main())
