/// Which globals (`module.name`, named by `GLOBAL`, `STACK_GLOBAL` or `INST`) a pickle may refer
/// to. Nothing a pickle names is ever imported or called, but a file that names anything outside
/// what its format really uses is not that format: a disguised pickle that calls `os.system` and
/// `POP`s the result would otherwise pass as a checkpoint.
///
/// Python: the `find_class` of an `Unpickler`; `torch.load(weights_only=True)` checks every global
/// against an allow-list the same way, when the opcode is read.
public struct PickleGlobals: Sendable, Equatable {
    /// `module.name` spellings allowed; nil allows every global.
    public let allowed: Set<String>?

    /// No restriction: for generic pickle tools and tests.
    public static let any = PickleGlobals(allowed: nil)

    /// Only the globals in `names` (`"collections.OrderedDict"`).
    public static func only(_ names: Set<String>) -> PickleGlobals { PickleGlobals(allowed: names) }

    private init(allowed: Set<String>?) { self.allowed = allowed }

    public func allows(module: String, name: String) -> Bool {
        allowed?.contains("\(module).\(name)") ?? true
    }
}
