from services.drafter.main import main

main()
