from referloop.cli import main

main()
