from forgehub.cli.entry import main

main()
