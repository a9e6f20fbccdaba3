from model_worker.cli import main

raise SystemExit(main())
