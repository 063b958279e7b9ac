from sr_train.cli import main

raise SystemExit(main())
