/* spin: a guest that never stops by itself. It prints "spinning" on COM1 so
 * that a test knows it runs, then loops forever with interrupts off. Used
 * by the --timeout, SIGTERM and stop tests. */
	.intel_syntax noprefix
	.code64
	.section .text
	.globl _start
_start:
	lea rsi, [rip + msg]
	mov ecx, msg_end - msg
	mov dx, 0x3f8
1:	lodsb
	out dx, al
	loop 1b
	cli
2:	jmp 2b
msg:	.ascii "spinning\n"
msg_end:
