from zorun.bench import main

main()
