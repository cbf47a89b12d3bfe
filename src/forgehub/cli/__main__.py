from forgehub.cli.main import main

main()
