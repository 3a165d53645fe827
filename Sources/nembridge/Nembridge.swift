import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif

@main
struct Nembridge: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nembridge",
        abstract: "Convert LLM checkpoints between Hugging Face safetensors and Megatron-Core torch_dist, exactly.",
        discussion: """
            A conversion is a compiled plan of byte moves: headers are read, tensor bytes are copied \
            through a fixed pool of buffers, and outputs appear complete or not at all.
            """,
        version: "0.1.0",
        subcommands: [Import.self, Export.self, Verify.self, Inspect.self, Reshard.self]
    )

    static func main() {
        raiseOpenFileLimit()
        main(nil)
    }

    /// A legacy checkpoint keeps one file open per rank (PP 16 × TP 8 × EP 8 is 1024 files, the
    /// usual soft limit): raise the soft limit on open files to the hard one, as far as allowed.
    static func raiseOpenFileLimit() {
        #if canImport(Glibc)
        var limit = rlimit()
        let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
        if getrlimit(resource, &limit) == 0, limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max
            _ = setrlimit(resource, &limit)
        }
        #endif
    }
}
