/*
 * hello: the smallest capsule unikernel.
 *
 * Entered in 64-bit long mode, identity-mapped, interrupts off, with
 * RDI = the capsule boot-info block (0x2000, see package bootloader),
 * RSI = a Linux zero page (0x1000, unused here), RSP = a small stack.
 * It takes its command line from the boot-info block and
 *   1. writes 123 to port 0xf5 (capsule's boot-time marker),
 *   2. prints "Hello from a capsule unikernel\n" and "cmdline: <cmdline>\n"
 *      on COM1 (port 0x3f8), or "bad boot info\n" and exits with status 2
 *      if the boot-info magic is wrong,
 *   3. writes N to port 0xf4 (capsule's exit port) for the last
 *      whitespace-separated token "exit=N" on the command line with N a
 *      decimal number 0-255 (malformed tokens are ignored; default 0),
 *   4. halts with interrupts off, forever.
 *
 * Build (the linker script puts everything in one PT_LOAD at 1 MiB):
 *   gcc -nostdlib -static -no-pie -Wl,-T,testdata/guests/hello.ld \
 *       -Wl,--build-id=none -o testdata/guests/hello.elf testdata/guests/hello.S
 *
 * Only block comments here: gcc puts the file through cpp (as it does
 * every .S file), which also brings in #include "lib64.inc".
 */
	.intel_syntax noprefix
	.code64

/* Strings first, so that their lengths are known constants where used. */
	.section .rodata, "a"
msg_hello:
	.ascii	"Hello from a capsule unikernel\n"
	.set	msg_hello_len, . - msg_hello
msg_cmdline:
	.ascii	"cmdline: "
	.set	msg_cmdline_len, . - msg_cmdline
msg_newline:
	.ascii	"\n"
msg_bad:
	.ascii	"bad boot info\n"
	.set	msg_bad_len, . - msg_bad

	.section .text.start, "ax", @progbits
	.globl	_start
	.type	_start, @function
_start:
	mov	al, 123
	out	0xf5, al		/* boot-time marker */
	cld				/* lodsb counts up (RFLAGS is 0x2 anyway) */
	mov	rbx, rdi		/* rbx: boot-info block, kept throughout */

	movabs	rax, 0x31454c5553504143	/* "CAPSULE1" */
	cmp	qword ptr [rbx], rax
	jne	.Lbad_boot_info

	lea	rsi, [rip + msg_hello]
	mov	ecx, msg_hello_len
	call	puts
	lea	rsi, [rip + msg_cmdline]
	mov	ecx, msg_cmdline_len
	call	puts

	mov	r12, qword ptr [rbx + 0x08]	/* r12: command-line address */
	mov	r13, qword ptr [rbx + 0x10]	/* r13: command-line length */
	mov	eax, 0xffff		/* never trust a length past CmdlineMax-1 */
	cmp	r13, rax
	cmova	r13, rax
	mov	rsi, r12
	mov	rcx, r13
	call	puts
	lea	rsi, [rip + msg_newline]
	mov	ecx, 1
	call	puts

	mov	rsi, r12
	mov	rcx, r13
	xor	r8d, r8d		/* default status 0 */
	call	parse_exit		/* al: exit status */
	out	0xf4, al		/* capsule stops the VM here */

.Lhalt:
	cli
	hlt
	jmp	.Lhalt

.Lbad_boot_info:
	lea	rsi, [rip + msg_bad]
	mov	ecx, msg_bad_len
	call	puts
	mov	al, 2
	out	0xf4, al
	jmp	.Lhalt
	.size	_start, . - _start

#include "lib64.inc"

	.section .note.GNU-stack, "", @progbits
